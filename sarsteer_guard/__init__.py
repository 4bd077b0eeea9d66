"""sarsteer-guard: SARSteer refusal steering for audio-language models in voice pipelines."""

from sarsteer_guard._version import __version__

__all__ = ["__version__"]
