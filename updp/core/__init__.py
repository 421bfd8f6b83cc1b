"""The foundation every layer may import: errors and exit codes, atomic file output, shared
constants, the version, distributed-process helpers and seeding.

Nothing here imports another updp package. `errors`, `io`, `constants` and `version` are
standard-library only, so the CLI can import them at start-up; `distributed` and `seeding`
import torch and are imported only by the code that trains.
"""
