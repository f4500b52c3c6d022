"""fedagg's configuration: one YAML file, environment overrides, validated at start-up.

Relative paths are resolved against the configuration file's directory. Any setting can be overridden from
the environment as ``FEDAGG__<SECTION>__<KEY>`` (for example ``FEDAGG__STORAGE__STATE_DIR=/var/lib/fedagg``
or ``FEDAGG__SERVER__TLS__CERTIFICATE_DIR=/etc/fedagg/tls``); values are read as YAML scalars.

* :mod:`~fedagg.config.schema`: :class:`Config`, the file's sections, and the federation plan they describe;
* one module per group of sections, declaring each key with its default, help and check:
  :mod:`~fedagg.config.federation` (``federation``), :mod:`~fedagg.config.server` (``server``),
  :mod:`~fedagg.config.limits` (``limits``), :mod:`~fedagg.config.operations` (``ops``, ``hooks``,
  ``storage``, ``logging``), :mod:`~fedagg.config.topology` (``topology``: standalone, or a scale-out tier);
* :mod:`~fedagg.config.loading`: reading the file, the environment overlay, relative paths;
* :mod:`~fedagg.config.checks`: rules that span settings (ports, shutdown budget, the plan).
"""
