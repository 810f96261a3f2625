"""Tests of the deployment: the systemd unit, install/uninstall, sd_notify, the broker config."""
