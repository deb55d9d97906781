"""Reading one setting from the environment: the typed readers the settings use,
and the error a missing or unusable value raises (:mod:`taskbeam.config`)."""


class ConfigError(ValueError):
    """An environment variable is missing or has an unusable value."""


def env_int(env, name, default, low, high):
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def env_bool(env, name, default=False):
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
