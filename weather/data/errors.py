"""The one exception type that every data-layer check raises."""


class ArchiveError(ValueError):
    """An archive (or a request against it) that the data layer cannot use.

    The message always names the variable or coordinate at fault and the reason, so that a user
    can fix the input without reading our code.
    """
