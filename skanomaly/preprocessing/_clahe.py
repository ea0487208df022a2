"""Placeholder: being written."""


class CLAHE:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("CLAHE is not implemented yet")


class HistogramEqualization:  # placeholder until implemented
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("HistogramEqualization is not implemented yet")
