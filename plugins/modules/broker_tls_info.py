#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) celeryops maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: broker_tls_info
short_description: Check that a Celery broker's TLS endpoint accepts a CA bundle, a client certificate and its host name
version_added: 1.1.0
description:
  - Opens a TLS connection from the managed host to every broker of a C(rediss://) or C(amqps://) URL, the way a
    Celery worker does. It verifies the broker's certificate with O(ca_content) (or the system's CAs) and its host
    name, offers the client certificate, then sends the first bytes of the broker's protocol and reads the answer,
    so that a broker that refuses the client certificate after the handshake is found too.
  - The CA bundle, certificate and key are passed as content, not paths, so the check can run before any file is
    installed on the host. The client certificate and key are written to a private temporary directory for the
    check and removed after it.
  - Changes nothing. A broker that cannot be reached is warned about and reported, not failed, unless
    O(fail_on_unreachable=true), since a broker that is down while a host is provisioned is not a TLS problem.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The module changes nothing, so it runs the same check in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  url:
    description:
      - The broker URL, as Celery's C(broker_url). Several URLs separated by V(;) (Celery's failover list) are each
        checked.
      - The scheme must be V(rediss) or V(amqps); the port defaults to V(6379) and V(5671).
      - Only the scheme, host and port are used; the URL is never shown in output, since it may hold a password.
    type: str
    required: true
  ca_content:
    description:
      - PEM text of the CA certificates that may sign the broker's certificate. Omitted, the host's default CAs.
    type: str
  cert_content:
    description:
      - PEM text of the client certificate (and its chain) to offer the broker.
    type: str
  key_content:
    description:
      - PEM text of the client certificate's private key.
    type: str
  check_hostname:
    description:
      - Check that the broker's certificate names the host of O(url). Only with O(verify=true).
    type: bool
    default: true
  verify:
    description:
      - Verify the broker's certificate. With V(false) any certificate is accepted and O(ca_content) is not used, so
        the check shows only that the broker speaks TLS and accepts the client certificate.
    type: bool
    default: true
  timeout:
    description:
      - Seconds for the connection, the handshake and the broker's answer, each.
    type: float
    default: 10
  fail_on_unreachable:
    description:
      - Fail when a broker cannot be reached (connection refused, timeout, unknown host) instead of warning.
    type: bool
    default: false
notes:
  - What the module reports in RV(reason) tells which setting is wrong - V(verify) the CA bundle, V(hostname) the
    host name, V(client_certificate) the client certificate (refused by the broker, or asked for and not given),
    V(client_files) a certificate and key that do not load together, V(ca) a CA bundle that does not load.
seealso:
  - name: Celery broker_use_ssl
    description: The TLS settings of a Celery broker connection.
    link: https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-use-ssl
requirements:
  - Python's C(ssl) module with OpenSSL on the managed host.
author:
  - celeryops maintainers (@celeryops)
"""

EXAMPLES = r"""
- name: Check the broker's certificate with the app's CA before installing anything
  celeryops.celery.broker_tls_info:
    url: "{{ celery_broker_url }}"
    ca_content: "{{ lookup('ansible.builtin.file', 'files/broker-ca.pem') }}"
    cert_content: "{{ lookup('ansible.builtin.file', 'files/client.pem') }}"
    key_content: "{{ lookup('ansible.builtin.file', 'files/client.key') }}"
  register: broker_tls

- name: Show when the broker's certificate expires
  ansible.builtin.debug:
    msg: "{{ broker_tls.brokers | map(attribute='not_after') | list }}"
"""

RETURN = r"""
brokers:
  description: One entry per broker of O(url), in order.
  returned: always
  type: list
  elements: dict
  contains:
    endpoint:
      description: The broker's host and port.
      type: str
      sample: broker.example.internal:5671
    ok:
      description: Whether the TLS connection and the broker's first answer succeeded.
      type: bool
    tls_version:
      description: The TLS version agreed on.
      type: str
      sample: TLSv1.3
    subject:
      description: The common name of the broker's certificate.
      type: str
    issuer:
      description: The common name of the certificate's issuer.
      type: str
    not_after:
      description: When the broker's certificate expires, as OpenSSL prints it.
      type: str
      sample: Jan  5 09:12:01 2027 GMT
    reason:
      description: On failure, what failed (see RV(reason)).
      type: str
    error:
      description: On failure, the error as Python's C(ssl) module gives it.
      type: str
reason:
  description:
    - The reason of the first failure, one of V(verify), V(hostname), V(client_certificate), V(client_files), V(ca),
      V(tls), V(unreachable).
  returned: when a broker failed
  type: str
  sample: verify
"""

import os
import shutil
import socket
import ssl
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native
from urllib.parse import urlsplit

DEFAULT_PORTS = {'rediss': 6379, 'amqps': 5671}

# The first bytes of each protocol, and what the broker sends back to them: AMQP
# 0-9-1's protocol header is answered by a Connection.Start method frame (type
# 1); Redis answers PING with +PONG, or with an error when it wants a password.
HELLO = {
    'amqps': (b'AMQP\x00\x00\x09\x01', lambda data: data[:1] == b'\x01'),
    'rediss': (b'PING\r\n', lambda data: data[:1] in (b'+', b'-')),
}

# OpenSSL's verify codes for a certificate that names another host name or IP
# address (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH).
NAME_MISMATCH_CODES = (62, 64)


class TLSCheckError(Exception):
    def __init__(self, reason, error):
        super(TLSCheckError, self).__init__(error)
        self.reason = reason
        self.error = error


def parse_endpoints(url):
    """[(scheme, host, port)] of each URL of a ';'-separated failover list."""
    endpoints = []
    for part in url.split(';'):
        part = part.strip()
        scheme, sep, rest = part.partition('://')
        scheme = scheme.lower()
        if not sep or scheme not in DEFAULT_PORTS:
            raise ValueError("a broker URL's scheme must be one of %s; got %s" % (
                ', '.join(sorted(DEFAULT_PORTS)), scheme + '://' if sep else 'a URL without a scheme'))
        parsed = urlsplit('tls://' + rest)
        try:
            port = parsed.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise ValueError("a %s:// broker URL has a port that is not a number" % scheme)
        if not parsed.hostname:
            raise ValueError("a %s:// broker URL names no host" % scheme)
        endpoints.append((scheme, parsed.hostname, port))
    return endpoints


def _name(cert_part):
    """The commonName of a getpeercert() subject or issuer, else ''."""
    for rdn in cert_part or ():
        for key, value in rdn:
            if key == 'commonName':
                return value
    return ''


def _ssl_reason(error):
    """The OpenSSL reason of an SSLError (e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED), else ''."""
    return getattr(error, 'reason', None) or ''


def build_context(ca_content, certfile, keyfile, check_hostname, verify=True):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # check_hostname first: verify_mode cannot drop to CERT_NONE while it is on.
    context.check_hostname = check_hostname and verify
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify and ca_content:
        try:
            context.load_verify_locations(cadata=ca_content)
        except (ssl.SSLError, ValueError) as e:
            raise TLSCheckError('ca', 'the CA bundle does not load: %s' % to_native(e))
    elif verify:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as e:
            raise TLSCheckError('client_files', 'the client certificate and key do not load together: %s' % to_native(e))
    return context


def check_endpoint(context, scheme, host, port, timeout, connect=socket.create_connection):
    """A dict describing the broker at host:port; raises TLSCheckError."""
    try:
        raw = connect((host, port), timeout)
    except (OSError, socket.error) as e:
        raise TLSCheckError('unreachable', 'cannot connect: %s' % to_native(e))
    try:
        raw.settimeout(timeout)
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            code = getattr(e, 'verify_code', None)
            message = getattr(e, 'verify_message', None) or to_native(e)
            reason = 'hostname' if code in NAME_MISMATCH_CODES else 'verify'
            raise TLSCheckError(reason, 'certificate verify failed: %s' % message)
        except ssl.SSLError as e:
            raise TLSCheckError(_tls_reason(e), to_native(e))
        except (OSError, socket.error) as e:
            raise TLSCheckError('tls', 'the TLS handshake failed: %s' % to_native(e))
        info = {'tls_version': tls.version()}
        peer = tls.getpeercert() or {}
        info.update(subject=_name(peer.get('subject')), issuer=_name(peer.get('issuer')), not_after=peer.get('notAfter', ''))
        hello, answered = HELLO[scheme]
        try:
            tls.sendall(hello)
            data = tls.recv(16)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
            # A broker that refuses the client certificate may drop the
            # connection before its alert is read.
            data = b''
        except ssl.SSLError as e:
            raise TLSCheckError(_tls_reason(e), to_native(e))
        except (OSError, socket.error) as e:
            raise TLSCheckError('tls', 'the broker did not answer after the TLS handshake: %s' % to_native(e))
        if not data:
            raise TLSCheckError('client_certificate', 'the broker closed the connection right after the TLS handshake, '
                                                      'which brokers do when they refuse the client certificate')
        if not answered(data):
            raise TLSCheckError('tls', 'the broker answered something other than %s' % scheme[:-1])
        return info
    finally:
        raw.close()


def _tls_reason(error):
    """client_certificate for the alerts a server sends about the client's certificate, else tls."""
    reason = _ssl_reason(error)
    if 'CERTIFICATE' in reason or 'UNKNOWN_CA' in reason:
        return 'client_certificate'
    return 'tls'


def run(params, warn, connect=socket.create_connection):
    """(failed, result) of checking every broker of params['url']."""
    endpoints = parse_endpoints(params['url'])
    workdir = None
    certfile = keyfile = None
    try:
        if params['cert_content']:
            workdir = tempfile.mkdtemp(prefix='celeryops-tls-')
            certfile = os.path.join(workdir, 'client.pem')
            keyfile = os.path.join(workdir, 'client.key')
            for path, content in ((certfile, params['cert_content']), (keyfile, params['key_content'])):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, 'w') as handle:
                    handle.write(content)
        brokers = []
        failure = None
        try:
            context = build_context(params['ca_content'], certfile, keyfile, params['check_hostname'], params['verify'])
        except TLSCheckError as e:
            return True, {'brokers': [], 'reason': e.reason, 'msg': e.error}
        for scheme, host, port in endpoints:
            endpoint = '%s:%d' % (host, port)
            entry = {'endpoint': endpoint}
            try:
                entry.update(check_endpoint(context, scheme, host, port, params['timeout'], connect))
                entry['ok'] = True
            except TLSCheckError as e:
                entry.update(ok=False, reason=e.reason, error=e.error)
                if e.reason == 'unreachable' and not params['fail_on_unreachable']:
                    warn('The broker at %s could not be reached, so its TLS settings are not checked: %s' % (endpoint, e.error))
                elif failure is None:
                    failure = entry
            brokers.append(entry)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {'brokers': brokers}
    if failure:
        result.update(reason=failure['reason'],
                      msg='TLS to the broker at %s failed (%s): %s' % (failure['endpoint'], failure['reason'], failure['error']))
    return failure is not None, result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type='str', required=True, no_log=True),
            ca_content=dict(type='str'),
            cert_content=dict(type='str'),
            key_content=dict(type='str', no_log=True),
            check_hostname=dict(type='bool', default=True),
            verify=dict(type='bool', default=True),
            timeout=dict(type='float', default=10),
            fail_on_unreachable=dict(type='bool', default=False),
        ),
        required_together=[('cert_content', 'key_content')],
        supports_check_mode=True,
    )
    try:
        failed, result = run(module.params, module.warn)
    except ValueError as e:
        module.fail_json(msg='url: %s' % to_native(e), brokers=[])
    if failed:
        module.fail_json(**result)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
