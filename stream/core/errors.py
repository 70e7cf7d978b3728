"""User-facing errors: bad configuration or CLI use, reported as one actionable line."""


class ConfigError(Exception):
    """A settings, price, budget or eval-set file is wrong; the message says what to fix."""
