"""Exceptions that end a stage with a readable message instead of a traceback."""


class ShoprecError(Exception):
    """Base class for failures caused by input, configuration or state, not by bugs."""


class DataError(ShoprecError):
    """Input data is missing, unreadable or breaks the data contract."""


class ConfigError(ShoprecError):
    """A value in params.yaml or the environment is invalid."""


class RegistryError(ShoprecError):
    """The model registry is missing, incomplete or inconsistent."""


class TrainingError(ShoprecError):
    """Distributed training failed after the retries that `train.max_failures` allows."""
