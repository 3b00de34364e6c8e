"""Analyse the bundled sample micrographs with the public API.

    python examples/analyze_folder.py [OUT_DIR]
"""

import sys
from pathlib import Path

import imageextract

here = Path(__file__).resolve().parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/example-api")
result = imageextract.analyze([here / "emps-sample"], out, backend="classical",
                              nm_per_px=2.0, progress=False)
table = imageextract.load_particles(out)
print(f"{result.n_done} micrographs, {len(table)} particles; "
      f"median ECD {table.loc[~table.touches_border, 'ecd_nm'].median():.1f} nm")
sys.exit(result.exit_code)
