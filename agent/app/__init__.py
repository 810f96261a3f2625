"""The agent as a program: lifecycle, command line, systemd, logs, the demo.

service.py   build and run one configuration (``Agent``), signals, reload, health
cli.py       ``edge-agent`` (run, check-config, inspect, predict, demo)
systemd.py   sd_notify, the watchdog pinger
logs.py      logging set-up (text or JSON)
demo.py      ``edge-agent demo``: a broker if none, the agent on its defaults, a viewer
"""

__all__ = ["cli", "demo", "logs", "service", "systemd"]
