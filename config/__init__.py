"""Site configs and device profiles, as data.

`demo.toml` is the simulated suite `cellfab demo` runs; `example.toml` is an annotated file
for a real site; `profiles/*.toml` are register maps, each naming the public document it
follows. This package holds no code: it only makes the files importable resources, so an
installed `cellfab` finds its built-in profiles and the demo's embedded defaults.
"""
