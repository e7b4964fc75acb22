"""
The mistakes a newcomer makes first end in an error that names the fix:
calling a function defined where a child cannot import it from (``python
-c``, standard input), and a script whose top level starts the program
again in the child because it lacks an ``if __name__ == '__main__':``
guard.
"""
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent('''
    import os
    import mitogen.master

    def pid():
        return os.getpid()

    router = mitogen.master.Router()
    try:
        router.local().call(pid)
    except Exception as e:
        print('%s: %s' % (type(e).__name__, e))
    finally:
        router.broker.shutdown()
        router.broker.join()
''')


def run(argv, stdin=None, cwd=None):
    proc = subprocess.run(argv, input=stdin, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60)
    return proc.stdout.decode()


def test_function_from_python_dash_c_names_the_fix():
    out = run([sys.executable, '-c', PROGRAM])

    assert out.startswith('TypeError: cannot call <function pid')
    assert 'python -c' in out
    assert 'define it in a .py file and run that file' in out


def test_function_from_a_program_on_standard_input_names_the_fix():
    out = run([sys.executable, '-'], stdin=PROGRAM.encode())

    assert 'define it in a .py file and run that file' in out


def test_script_without_main_guard_names_the_guard(tmp_path):
    (tmp_path / 'unguarded.py').write_text(PROGRAM)

    out = run([sys.executable, 'unguarded.py'], cwd=str(tmp_path))

    assert out.startswith('CallError: mitogen.core.Error: mitogen.master.'
                          'Router can only be used in the master process')
    assert "put it under an if __name__ == '__main__': guard" in out
