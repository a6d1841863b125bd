#!/bin/bash
# Placeholder worker: the import only needs the file to exist.
exec sleep infinity
