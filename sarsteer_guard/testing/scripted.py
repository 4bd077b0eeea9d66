"""The scripted stand-in guard of the test kit (defined in :mod:`sarsteer_guard.server.scripted`).

Re-exported here so tests and benchmarks keep one import for the whole kit; library
code imports it from the server package and never from ``testing``.
"""

from sarsteer_guard.server.scripted import ScriptedGuard

__all__ = ["ScriptedGuard"]
