"""What a cell costs: MACs from the decision log, a latency protocol, peak memory."""
from harness.cost.latency import Latency, Timer, measure_latency
from harness.cost.macs import CostTable, cost_table, macs_from_log
from harness.cost.memory import PeakMemory, track_peak_memory

__all__ = ["CostTable", "cost_table", "macs_from_log", "Latency", "Timer", "measure_latency",
           "PeakMemory", "track_peak_memory"]
