"""The DRBD simulator: a process per simulated node with DRBD's front ends and formats."""
