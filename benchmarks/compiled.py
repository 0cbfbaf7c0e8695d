"""asv benchmarks of the compiled mode: ``torch.compile`` of the ``module`` step, per workload.

* ``CompiledStep.time_step``: one compiled step in steady state (CPU, one thread), to set
  beside ``training.Training.time_step`` of the ``module`` style;
* ``CompiledStep.track_compile_time``: the seconds the first call on every batch shape took
  (tracing and code generation), kept apart from the step time.

The backend is inductor, or ``TORCHLOOPS_COMPILE_BACKEND`` (the CI smoke test uses ``eager``).
Compiling costs seconds per workload, so each benchmark process compiles once and its
samples reuse the compiled step (each sample trains it one step further, which does not
change a step's cost); ``setup`` does not rebuild it as the eager benchmarks do.
"""


from .common import WORKLOADS, Benchmark, engine_module

_COMPILED = {}  # workload -> CompiledStep, per benchmark process


def compiled_step(workload: str):
    if workload not in _COMPILED:
        _COMPILED[workload] = engine_module("compiled").CompiledStep(workload)
    return _COMPILED[workload]


class Compiled(Benchmark):
    version = "1"
    params = [WORKLOADS]
    param_names = ["workload"]
    timeout = 600.0  # the first setup compiles

    def setup(self, workload):
        self.prepared = compiled_step(workload)

    def teardown(self, workload):
        if hasattr(self, "prepared"):
            self.prepared.check()

    def time_step(self, workload):
        self.prepared.step()

    def track_compile_time(self, workload):
        return self.prepared.compile_s

    track_compile_time.unit = "seconds"
