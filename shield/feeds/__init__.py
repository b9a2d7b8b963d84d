"""What Shield learns of clients from outside the request: network databases and address lists.

``geo`` reads MaxMind-format databases, ``lists`` address-list files, and ``networks`` keeps
both in step with the config and with their files, behind the one ``Directory`` rules ask
(``shield.decide.network_facts``). Files are re-read when they change; a file that fails to load
leaves what was loaded before in force.
"""
