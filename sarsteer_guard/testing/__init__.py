"""The shipped test kit: tiny models, real speech, audit capture, a scripted guard."""
