"""Child processes a test starts, reaped whatever the test's outcome."""

import contextlib


@contextlib.contextmanager
def reaped(processes: list):
  """Yields ``processes`` (a list the body may start and extend); on the way
  out kills those started and still alive and joins them, so that a failing
  test leaves no process behind."""
  try:
    yield processes
  finally:
    for p in (p for p in processes if p.pid is not None):   # started
      if p.is_alive():
        p.kill()
      p.join()
