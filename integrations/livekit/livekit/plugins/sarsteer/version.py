"""Version of the livekit-plugins-sarsteer distribution."""

__version__ = "0.1.0"
