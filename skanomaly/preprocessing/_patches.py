"""Placeholder: being written."""


class PatchExtractor:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("PatchExtractor is not implemented yet")
