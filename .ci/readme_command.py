"""Prints README command N (1: install + main job, 2: install + tests): the first two ```bash
blocks of README.md, so CI runs exactly what a new user copies."""

import os
import re
import sys

readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "README.md")).read()
blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
n = int(sys.argv[1])
if len(blocks) < n:
    sys.exit(f"README.md has {len(blocks)} bash blocks, need {n}")
print(blocks[n - 1].strip())
