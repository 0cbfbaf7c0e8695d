"""How the cost of a step and of an epoch grows with rows, batch size and hidden width.

For the classification MLP and the two "from raw" MLPs (``Workload.scales``),
``module`` style on the CPU, one thread.  One parameter changes at a time; the
others keep their documented values.  Rows are the documented training rows
repeated (what scales is the cost, not the task); an epoch here is one pass over
the rows.
"""


from .common import Benchmark, benchmarking, skip_unavailable

WORKLOADS = benchmarking.scaling_workloads()


class _Scaling(Benchmark):
    version = "1"
    repeat = (5, 20, 5.0)
    scale = None  # the keyword of benchmarking.scaled_config this class scans

    def setup(self, workload, value):
        self.prepared = skip_unavailable(benchmarking.prepare_scaled, workload, **{self.scale: value})

    def time_step(self, workload, value):
        self.prepared.step()

    def time_epoch(self, workload, value):
        self.prepared.epoch()


class ScalingRows(_Scaling):
    params = [WORKLOADS, list(benchmarking.SCALING_ROWS)]
    param_names = ["workload", "rows"]
    scale = "rows"


class ScalingBatchSize(_Scaling):
    params = [WORKLOADS, list(benchmarking.SCALING_BATCH_SIZES)]
    param_names = ["workload", "batch_size"]
    scale = "batch_size"


class ScalingHidden(_Scaling):
    params = [WORKLOADS, list(benchmarking.SCALING_HIDDEN)]
    param_names = ["workload", "hidden"]
    scale = "hidden"
