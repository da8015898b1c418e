"""Simulators: physics models of every device, served over the device's real protocol.

They are product code, selected by config (`[devices.simulator]`), never by "am I under
pytest?": the demo, CI and a newcomer's first run use the same code the floor would see.
Each model is seeded and stepped on a fixed simulated clock, so a run is reproducible.
"""
