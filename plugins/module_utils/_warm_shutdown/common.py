# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What every part of the warm-shutdown engine shares: the error meant for
the user, the C locale for parsed output, and how times, PIDs and what a
manager printed are put into messages."""

import re
import signal

C_LOCALE = {'LANG': 'C', 'LC_ALL': 'C', 'LC_MESSAGES': 'C'}


class WarmShutdownError(Exception):
    """A failure with a message meant for the user (no traceback)."""

    def __init__(self, msg, services=None, changed=False):
        super().__init__(msg)
        self.msg = msg
        self.services = services or []
        self.changed = changed


def to_text(value):
    if value is None:
        return ''
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return '%s' % (value,)


def one_line(*texts, **kwargs):
    """Collapse what a manager printed into one trimmed line."""
    limit = kwargs.get('limit', 300)
    parts = []
    for text in texts:
        for line in to_text(text).splitlines():
            line = ' '.join(line.split())
            if line:
                parts.append(line)
    result = ' / '.join(parts)
    if len(result) > limit:
        result = result[:limit - 3] + '...'
    return result or '(no output)'


def format_pids(pids):
    return ', '.join(str(p) for p in sorted(pids)) or 'none'


def format_seconds(value):
    """Format a number of seconds the way the messages use it (600 -> '600s', 1.5 -> '1.5s')."""
    if value is None:
        return 'infinity'
    if float(value).is_integer():
        return '%ds' % int(value)
    return '%ss' % round(value, 3)


_TIMESPAN_UNITS = (
    ('usec', 1e-6), ('us', 1e-6), ('\u00b5s', 1e-6),
    ('msec', 1e-3), ('ms', 1e-3),
    ('seconds', 1.0), ('second', 1.0), ('sec', 1.0), ('s', 1.0),
    ('minutes', 60.0), ('minute', 60.0), ('min', 60.0), ('m', 60.0),
    ('hours', 3600.0), ('hour', 3600.0), ('hr', 3600.0), ('h', 3600.0),
    ('days', 86400.0), ('day', 86400.0), ('d', 86400.0),
    ('weeks', 604800.0), ('week', 604800.0), ('w', 604800.0),
    ('months', 2629800.0), ('month', 2629800.0), ('M', 2629800.0),
    ('years', 31557600.0), ('year', 31557600.0), ('y', 31557600.0),
)
_TIMESPAN_RE = re.compile('([0-9]+(?:\\.[0-9]+)?)\\s*([a-zA-Z\u00b5]*)')


def parse_timespan(text):
    """Parse a systemd time span as printed by 'systemctl show' ('1min 30s', '10min', 'infinity', '90').

    Returns seconds as a float, None for infinity or anything not understood.
    """
    text = to_text(text).strip()
    if not text or text == 'infinity':
        return None
    units = dict(_TIMESPAN_UNITS)
    total = 0.0
    pos = 0
    for match in _TIMESPAN_RE.finditer(text):
        if text[pos:match.start()].strip():
            return None
        pos = match.end()
        number, unit = match.groups()
        if not unit:
            # A bare number is in seconds for *Sec= settings; *USec properties are never printed that way.
            factor = 1.0
        elif unit in units:
            factor = units[unit]
        else:
            return None
        total += float(number) * factor
    if text[pos:].strip() or pos == 0:
        return None
    return total


def signal_name(sig):
    try:
        return signal.Signals(sig).name
    except (ValueError, AttributeError):
        return 'signal %s' % sig
