"""bnbench's built-in plugins. Each subpackage registers through the ``bnbench`` entry points,
exactly as a third-party package does; the core never imports them."""
