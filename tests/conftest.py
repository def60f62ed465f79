import sys
from pathlib import Path

# Spawned test workers import helpers from this folder.
sys.path.insert(0, str(Path(__file__).parent))
