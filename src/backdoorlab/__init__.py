"""backdoorlab: build, break, detect and defend backdoored image classifiers."""
