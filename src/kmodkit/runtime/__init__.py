"""The running kernel's modules: /proc/modules, /sys/module, taint, health, metrics."""
