"""The long-running service: discovery feeds per-company lanes; signals, sd_notify, metrics."""
