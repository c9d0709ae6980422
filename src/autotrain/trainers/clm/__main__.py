"""`python -m autotrain.trainers.clm --training_config FILE`: the parent tool's entry point of one training process,
which launchers (accelerate launch, torchrun, slurm) run; autotrain.worker holds it."""

import sys

from autotrain.worker import main

if __name__ == "__main__":
    sys.exit(main())
