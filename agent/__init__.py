"""edge-agent: on-device ML inference for Raspberry-Pi-class fleets.

The data path is the architecture (see docs/architecture.md):

    sources/ -> window -> preprocess -> runtime -> postprocess -> publisher (spool + mqtt)
"""

__version__ = "0.1.0"
