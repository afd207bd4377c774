"""Fencing: verified power-off of the peer (DESIGN section 8).

Agents (``ipmi``, ``redfish``, ``stock``, ``libvirt_agent``, ``manual``)
keep the contract of :mod:`.agent`; :mod:`.coordinator` runs one fence at a
time through ordered levels and writes the record of :mod:`.journal` before
anyone is told "confirmed"; :mod:`.identity` checks that a device controls
the peer; :mod:`.monitor` checks device health and redundancy;
:mod:`.watchdog` is the optional local self-fence backstop.
"""
