"""The functional core: pure functions ``fn(x, sample_rate, *, param=...)`` on tensors.

Audio is ``(batch, channels, time)``. Parameters are floats, ``(B,)`` per item or
``(B, C)`` per channel. Nothing here keeps state or touches a file.
"""
