"""asv micro-benchmarks of the notes' snippets that are not workloads.

``LeNet3``: the "常用网络节点" line, ``nn.Conv2d(3, 6, 5)``, ``nn.MaxPool2d(2, 2)``,
``Linear(16 * 5 * 5, 120)``, as the three-channel 32x32 LeNet (:class:`workloads.lenet.Net3`),
one step of the notes' recommended optimizer loop (``SGD(lr=0.01)``) with the suite's
``CrossEntropyLoss`` (the notes' criterion there is ``MSELoss``) on synthetic 3x32x32 batches
(no data download).  One intra-op thread, as every benchmark.
"""

import torch

from workloads import lenet


class LeNet3:
    """One training step of the three-channel LeNet on a synthetic batch."""

    version = "1"
    params = [[1, 32]]
    param_names = ["batch_size"]
    warmup_time = 0.0
    timeout = 120.0

    def setup(self, batch_size):
        torch.set_num_threads(1)
        self.step = lenet.lenet3_trainer(seed=0)
        self.batches = lenet.lenet3_batches(batch_size=batch_size, batches=4, seed=0)
        self.index = 0
        for images, labels in self.batches:  # first calls (allocations, oneDNN primitives) untimed
            self.step(images, labels)

    def time_lenet3_step(self, batch_size):
        images, labels = self.batches[self.index % len(self.batches)]
        self.index += 1
        self.step(images, labels)
