"""ERA5/WeatherBench2-style data: reading, catalogue, statistics and training windows."""
