# nbval: compare stdout and results, never stderr (warnings and library notices vary by machine).
def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
