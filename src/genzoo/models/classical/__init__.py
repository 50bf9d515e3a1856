"""Classical density models, the baselines every deep family is read against."""
