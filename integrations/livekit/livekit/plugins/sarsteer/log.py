"""The plugin's logger.

Standard ``logging`` under ``livekit.plugins.sarsteer``, like LiveKit's own plugins, so
the agent worker's log configuration and job context fields apply to it.
"""

import logging

logger = logging.getLogger("livekit.plugins.sarsteer")
