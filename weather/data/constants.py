"""Physical constants shared by the reader, the simulator, the plots and the benchmarks."""

# Standard gravity (m s-2, WMO, as ERA5 uses): geopotential (m2 s-2) = GRAVITY x geopotential
# height (m).
GRAVITY = 9.80665
