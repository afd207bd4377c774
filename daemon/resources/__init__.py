"""The resource group: DRBD Primary -> filesystem -> floating IP -> VMs (DESIGN section 7).

- ``group.GroupExecutor`` runs start/stop sequences with gate checks,
  deadlines, rollback, retries and per-phase timings.
- Steps: ``drbd.DrbdStep`` (over the ``drbd.DrbdControl`` contract),
  ``filesystem.Filesystem``, ``ip.FloatingIp``, ``vms.VmStep``.
- VM facts: ``libvirtconn.LibvirtClient`` and ``vmmonitor.VmMonitor``; save
  images: ``saveimage.ImageStore``; the admin-intent copy: ``intent``.
- ``assembly.build`` puts them together from the configuration.
"""
