"""Placeholder: being written."""


class LungMasker:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("LungMasker is not implemented yet")


class MaskApplier:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("MaskApplier is not implemented yet")
