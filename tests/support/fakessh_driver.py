"""
A local command for tests/test_fakessh.py, run under mitogen.fakessh.run():
drives the fake ``ssh`` through pipes and reports what it saw as JSON in the
file named by its first argument.

Modes (second argument):

stdout-eof-first
    The remote command prints a line, closes its stdout and stderr, then
    waits for its stdin to end. Reading our end of its stdout to end of file
    must finish while the remote command still runs (it would never end if
    end of file were not propagated), and only then is stdin closed.
kill-ssh
    The remote command writes its PID to the marker file (third argument)
    and sleeps; once the marker exists, the fake ``ssh`` is killed with
    SIGKILL.
"""
import json
import os
import signal
import subprocess
import sys
import time


def stdout_eof_first():
    proc = subprocess.Popen(
        ['ssh', 'host', 'echo first; exec >&- 2>&-; cat > /dev/null'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    still_running = proc.poll() is None
    proc.stdin.close()
    return {'out': out.decode(), 'ran_after_eof': still_running,
            'status': proc.wait()}


def kill_ssh(marker):
    proc = subprocess.Popen(
        ['ssh', 'host', 'echo $$ > %s.tmp && mv %s.tmp %s && exec sleep 60'
                         % (marker, marker, marker)],
        stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    return {'status': proc.wait(), 'marker': os.path.exists(marker)}


def main():
    report, mode = sys.argv[1:3]
    if mode == 'stdout-eof-first':
        result = stdout_eof_first()
    else:
        result = kill_ssh(sys.argv[3])
    with open(report, 'w') as f:
        json.dump(result, f)


if __name__ == '__main__':
    main()
