#!/usr/bin/env bash
# The demo: boots Debian and Ubuntu containers with a Redis broker, provisions
# them with the collection as installed from its tarball (systemd on two hosts,
# supervisor on one, Beat on one), then shows the workers' status and a task
# executed on each host. The containers stay up; `make demo-clean` removes them.
source "$(dirname "$0")/common.sh"

if [[ "${1:-}" == "--destroy" ]]; then
  activate_venv
  cd "${REPO_ROOT}" && molecule destroy --scenario-name demo
  exit 0
fi

ready_machine debian-12 debian-13 ubuntu-24.04 redis
for step in create prepare converge; do
  log "molecule ${step}"
  molecule "${step}" --scenario-name demo
done

app=testapp
in_app="cd /srv/${app}/current && set -a && . /etc/${app}/celery.env && set +a &&"
echo
for host in demo-debian-12 demo-ubuntu-2404 demo-debian-13; do
  printf '\n===== %s =====\n' "$host"
  if docker exec "$host" test -f "/etc/supervisor/conf.d/${app}.conf"; then
    docker exec "$host" supervisorctl status
  else
    docker exec "$host" systemctl --no-pager --lines=0 status "${app}.target" "${app}-worker-default.service" "${app}-beat.service" 2>/dev/null \
      | grep -E '^(●|○)|Active:|Main PID:' || true
    docker exec "$host" sh -c "systemd-analyze security ${app}-worker-default.service | tail -n 1"
  fi
  echo "-- a task published to the broker and executed by this host's workers:"
  docker exec "$host" sh -c "${in_app} .venv/bin/python -m celery_testapp.probe call whoami --timeout 30"
done
printf '\nBeat runs on: '
for host in demo-debian-12 demo-ubuntu-2404 demo-debian-13; do
  docker exec "$host" pgrep -f -- ' beat ' >/dev/null && printf '%s ' "$host"
done
printf '\n\nThe containers stay up (docker exec -it demo-debian-12 bash). Remove them with: make demo-clean\n'
