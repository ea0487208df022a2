"""Placeholder: being written."""


class Resize:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Resize is not implemented yet")
