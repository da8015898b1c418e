"""Drivers: where a reading is born.

One module per protocol or device family. A driver owns one session to one device (or bus),
turns what the device answers into `Sample`s that carry their own quality, and never writes
0 or the last good value in place of a failed read. `registry.DRIVERS` lists them explicitly.
"""
