"""Placeholder: being written."""


class FilmCrop:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("FilmCrop is not implemented yet")


class HandMasker:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("HandMasker is not implemented yet")
