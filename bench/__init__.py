"""swarmbench: SwarmSGD and its baselines under identical launches."""

__version__ = "0.1.0"
