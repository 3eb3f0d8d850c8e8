"""Child processes a test starts, reaped whatever the test's outcome, and a reader
interrupted mid-copy as a writer in another process would interrupt it."""

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


class FetchHook(dict):
  """Arrays by name (a replay's or a store's) that call ``hook`` once, just
  before ``key`` is first fetched: a reader interrupted there by a writer in
  another process."""

  def __init__(self, arrays, key, hook):
    super().__init__(arrays)
    self._key, self._hook = key, hook

  def __getitem__(self, key):
    if key == self._key and self._hook is not None:
      hook, self._hook = self._hook, None
      hook()
    return super().__getitem__(key)
