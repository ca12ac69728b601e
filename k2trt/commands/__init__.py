"""Click subcommands, one module per concern. Each callback builds a spec from its options, calls one library
function and renders the result. Modules here import library code lazily when it needs torch."""
