//! The cases of KubeVirt v1.9's network admitter tests (pkg/network/admitter/*_test.go), as
//! tables over a valid VMI; see tests/admitters/mod.rs.

#[macro_use]
mod admitters;

use admitters::{push, run, set, Accept, Reject};
use serde_json::json;

#[test]
fn interface_state_and_binding() {
    run(&[
        case!("state up", |v| set(v, "/spec/domain/devices/interfaces/0/state", json!("up")), Accept),
        case!("state down", |v| set(v, "/spec/domain/devices/interfaces/0/state", json!("down")), Accept),
        case!(
            "state unknown",
            |v| set(v, "/spec/domain/devices/interfaces/0/state", json!("bogus")),
            Reject("spec.domain.devices.interfaces[0].state", "logical default interface state value is unsupported: bogus")
        ),
        case!(
            "state absent on masquerade",
            |v| set(v, "/spec/domain/devices/interfaces/0/state", json!("absent")),
            Reject("spec.domain.devices.interfaces[0].state", "\"default\" interface's state \"absent\" is supported only for bridge binding")
        ),
        case!(
            "state absent on the default network",
            |v| {
                set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "bridge": {}, "state": "absent"}));
            },
            Reject("spec.domain.devices.interfaces[0].state", "\"default\" interface's state \"absent\" is not supported on default networks")
        ),
        case!(
            "state absent on a secondary bridge",
            |v| {
                push(v, "/spec/networks", json!({"name": "sec", "multus": {"networkName": "nad"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "sec", "bridge": {}, "state": "absent"}));
            },
            Accept
        ),
        case!(
            "state down on SR-IOV",
            |v| {
                push(v, "/spec/networks", json!({"name": "sriov", "multus": {"networkName": "nad"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "sriov", "sriov": {}, "state": "down"}));
            },
            Reject("spec.domain.devices.interfaces[1].state", "\"sriov\" interface's state \"down\" is not supported for SR-IOV NICs")
        ),
        case!(
            "no binding",
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default"})),
            Reject("spec.domain.devices.interfaces[0]", "logical default interface must have exactly one binding method or binding plugin")
        ),
        case!(
            "two bindings",
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "masquerade": {}, "bridge": {}})),
            Reject("spec.domain.devices.interfaces[0]", "logical default interface must have exactly one binding method or binding plugin")
        ),
        case!(
            "binding plugin",
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "binding": {"name": "plugin"}})),
            Accept
        ),
        case!(
            "passt binding on the pod network",
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "passtBinding": {}})),
            Accept
        ),
        case!(
            "passt binding with its gate disabled",
            cfg = |c| c.disabled_feature_gates = vec!["PasstBinding".into()],
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "passtBinding": {}})),
            Reject("spec.domain.devices.interfaces[0].name", "PasstBinding feature gate is not enabled")
        ),
        case!(
            "passt binding on a multus network",
            |v| {
                push(v, "/spec/networks", json!({"name": "sec", "multus": {"networkName": "nad"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "sec", "passtBinding": {}}));
            },
            Reject("spec.domain.devices.interfaces[1].name", "PasstBinding interface only implemented with pod network")
        ),
        case!(
            "masquerade with the bridge's reserved MAC",
            |v| set(v, "/spec/domain/devices/interfaces/0/macAddress", json!("02:00:00:00:00:00")),
            Reject("spec.domain.devices.interfaces[0].macAddress", "The requested MAC address is reserved for the in-pod bridge. Please choose another one.")
        ),
        case!(
            "bridge on the pod network when not permitted",
            cfg = |c| c.permit_bridge_on_pod_network = false,
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "bridge": {}})),
            Reject("spec.domain.devices.interfaces[0].name", "Bridge on pod network configuration is not enabled under kubevirt-config")
        ),
    ]);
}

#[test]
fn addresses() {
    run(&[
        case!(
            "malformed MAC",
            |v| set(v, "/spec/domain/devices/interfaces/0/macAddress", json!("de:ad:be:ef")),
            Reject("spec.domain.devices.interfaces[0].macAddress", "interface spec.domain.devices.interfaces[0].name has malformed MAC address (de:ad:be:ef).")
        ),
        case!(
            "MAC with a QEMU option appended (hostile)",
            |v| set(v, "/spec/domain/devices/interfaces/0/macAddress", json!("de:ad:00:00:be:af,romfile=/etc/shadow")),
            Reject("spec.domain.devices.interfaces[0].macAddress", "has malformed MAC address")
        ),
        case!(
            "too long MAC",
            |v| set(v, "/spec/domain/devices/interfaces/0/macAddress", json!("00:00:00:00:fe:80:00:00")),
            Reject("spec.domain.devices.interfaces[0].macAddress", "interface spec.domain.devices.interfaces[0].name has too long MAC address (00:00:00:00:fe:80:00:00).")
        ),
        case!(
            "valid MAC",
            |v| set(v, "/spec/domain/devices/interfaces/0/macAddress", json!("de:ad:00:00:be:af")),
            Accept
        ),
        case!(
            "valid PCI address",
            |v| set(v, "/spec/domain/devices/interfaces/0/pciAddress", json!("0000:81:11.1")),
            Accept
        ),
        case!(
            "malformed PCI address",
            |v| set(v, "/spec/domain/devices/interfaces/0/pciAddress", json!("0000:80.10.1")),
            Reject("spec.domain.devices.interfaces[0].pciAddress", "interface spec.domain.devices.interfaces[0].name has malformed PCI address (0000:80.10.1).")
        ),
        case!(
            "PCI address with a QEMU option appended (hostile)",
            |v| set(v, "/spec/domain/devices/interfaces/0/pciAddress", json!("0000:00:05.0,romfile=/x")),
            Reject("spec.domain.devices.interfaces[0].pciAddress", "has malformed PCI address")
        ),
        case!(
            "PCI function above 7",
            |v| set(v, "/spec/domain/devices/interfaces/0/pciAddress", json!("0000:00:05.8")),
            Reject("spec.domain.devices.interfaces[0].pciAddress", "has malformed PCI address")
        ),
        case!(
            "unknown interface model",
            |v| set(v, "/spec/domain/devices/interfaces/0/model", json!("bogus")),
            Reject("spec.domain.devices.interfaces[0].model", "interface spec.domain.devices.interfaces[0].name uses model bogus that is not supported.")
        ),
        case!(
            "interface name with a dot",
            |v| {
                set(v, "/spec/domain/devices/interfaces/0/name", json!("a.b"));
                set(v, "/spec/networks/0/name", json!("a.b"));
            },
            Reject("spec.domain.devices.interfaces[0].name", "Network interface name can only contain alphabetical characters, numbers, dashes (-) or underscores (_)")
        ),
    ]);
}

#[test]
fn ports_and_dhcp() {
    run(&[
        case!(
            "forwarded ports",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}])),
            Accept
        ),
        case!(
            "port 0",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"port": 0}])),
            Reject("spec.domain.devices.interfaces[0].ports[0].port", "Port field is mandatory.")
        ),
        case!(
            "port out of range",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"port": 65536}])),
            Reject("spec.domain.devices.interfaces[0].ports[0].port", "Port field must be in range 0 < x < 65536.")
        ),
        case!(
            "port protocol SCTP",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"port": 80, "protocol": "SCTP"}])),
            Reject("spec.domain.devices.interfaces[0].ports[0].protocol", "Unknown protocol, only TCP or UDP allowed")
        ),
        case!(
            "duplicate port names",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"name": "http", "port": 80}, {"name": "http", "port": 8080}])),
            Reject("spec.domain.devices.interfaces[0].ports[1].name", "Duplicate name of the port: http")
        ),
        case!(
            "invalid port name",
            |v| set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"name": "Bad_Name", "port": 80}])),
            Reject("spec.domain.devices.interfaces[0].ports[0].name", "Invalid name of the port: Bad_Name")
        ),
        case!(
            "portRanges without its gate",
            |v| set(v, "/spec/domain/devices/interfaces/0/portRanges", json!([{"start": 1000, "end": 2000, "protocol": "TCP"}])),
            Reject("spec.domain.devices.interfaces[0].name", "portRanges is specified on interface but the PortRangesSpec feature gate is not enabled")
        ),
        case!(
            "portRanges with its gate",
            cfg = |c| c.feature_gates = vec!["PortRangesSpec".into()],
            |v| set(v, "/spec/domain/devices/interfaces/0/portRanges", json!([{"start": 1000, "end": 2000, "protocol": "TCP"}, {"start": 1000, "end": 2000, "protocol": "UDP"}])),
            Accept
        ),
        case!(
            "overlapping portRanges",
            cfg = |c| c.feature_gates = vec!["PortRangesSpec".into()],
            |v| set(v, "/spec/domain/devices/interfaces/0/portRanges", json!([{"start": 1000, "end": 2000, "protocol": "TCP"}, {"start": 1500, "end": 2500, "protocol": "TCP"}])),
            Reject("spec.domain.devices.interfaces[0].portRanges", "TCP portRanges [1000-2000] and [1500-2500] overlap")
        ),
        case!(
            "portRanges start above end",
            cfg = |c| c.feature_gates = vec!["PortRangesSpec".into()],
            |v| set(v, "/spec/domain/devices/interfaces/0/portRanges", json!([{"start": 2000, "end": 1000, "protocol": "TCP"}])),
            Reject("spec.domain.devices.interfaces[0].portRanges[0].start", "Start must be less than or equal to end")
        ),
        case!(
            "ports and portRanges together",
            cfg = |c| c.feature_gates = vec!["PortRangesSpec".into()],
            |v| {
                set(v, "/spec/domain/devices/interfaces/0/ports", json!([{"port": 80}]));
                set(v, "/spec/domain/devices/interfaces/0/portRanges", json!([{"start": 1000, "end": 2000, "protocol": "TCP"}]));
            },
            Reject("spec.domain.devices.interfaces[0].name", "Cannot define both ports and portRanges on interface")
        ),
        case!(
            "DHCP options",
            |v| set(v, "/spec/domain/devices/interfaces/0/dhcpOptions", json!({"ntpServers": ["192.168.0.1"], "privateOptions": [{"option": 240, "value": "x"}]})),
            Accept
        ),
        case!(
            "DHCP private option out of range",
            |v| set(v, "/spec/domain/devices/interfaces/0/dhcpOptions", json!({"privateOptions": [{"option": 223, "value": "x"}]})),
            Reject("spec", "provided DHCPPrivateOptions are out of range, must be in range 224 to 254")
        ),
        case!(
            "duplicate DHCP private options",
            |v| set(v, "/spec/domain/devices/interfaces/0/dhcpOptions", json!({"privateOptions": [{"option": 240, "value": "x"}, {"option": 240, "value": "y"}]})),
            Reject("spec", "Found Duplicates: you have provided duplicate DHCPPrivateOptions")
        ),
        case!(
            "IPv6 NTP server",
            |v| set(v, "/spec/domain/devices/interfaces/0/dhcpOptions", json!({"ntpServers": ["::1"]})),
            Reject("spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[0]", "NTP servers must be a list of valid IPv4 addresses.")
        ),
    ]);
}

#[test]
fn network_sources() {
    run(&[
        case!(
            "two pod networks",
            |v| {
                push(v, "/spec/networks", json!({"name": "pod2", "pod": {}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "pod2", "masquerade": {}}));
            },
            Reject("spec.interfaces", "more than one interface is connected to a pod network in spec.interfaces")
        ),
        case!(
            "network without a source",
            |v| set(v, "/spec/networks/0", json!({"name": "default"})),
            Reject("spec.networks[0]", "should have a network type")
        ),
        case!(
            "network with two sources",
            |v| set(v, "/spec/networks/0", json!({"name": "default", "pod": {}, "multus": {"networkName": "n"}})),
            Reject("spec.networks[0]", "should have only one network type")
        ),
        case!(
            "duplicate network names",
            |v| push(v, "/spec/networks", json!({"name": "default", "multus": {"networkName": "n"}})),
            Reject("spec.networks[1].name", "Network with name \"default\" already exists, every network must have a unique name")
        ),
        case!(
            "network without an interface",
            |v| push(v, "/spec/networks", json!({"name": "sec", "multus": {"networkName": "n"}})),
            Reject("spec.networks[1].name", "spec.networks[1].name 'sec' not found.")
        ),
        case!(
            "DRA network without its gate",
            |v| {
                push(v, "/spec/networks", json!({"name": "dra", "resourceClaim": {"claimName": "c", "requestName": "r"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "dra", "sriov": {}}));
            },
            Reject("spec.networks", "vmi.spec.networks contains DRA networks but NetworkDevicesWithDRA feature gate is not enabled")
        ),
        case!(
            "DRA network without a request name",
            cfg = |c| c.feature_gates = vec!["NetworkDevicesWithDRA".into()],
            |v| {
                push(v, "/spec/networks", json!({"name": "dra", "resourceClaim": {"claimName": "c"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "dra", "sriov": {}}));
            },
            Reject("spec.networks[1].resourceClaim.requestName", "requestName is required for DRA network")
        ),
        case!(
            "DRA network with a masquerade interface",
            cfg = |c| c.feature_gates = vec!["NetworkDevicesWithDRA".into()],
            |v| {
                push(v, "/spec/networks", json!({"name": "dra", "resourceClaim": {"claimName": "c", "requestName": "r"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "dra", "masquerade": {}}));
            },
            Reject("spec.domain.devices.interfaces", "DRA network \"dra\" requires an SR-IOV or binding plugin interface")
        ),
        case!(
            "DRA network with a claim not in resourceClaims",
            cfg = |c| c.feature_gates = vec!["NetworkDevicesWithDRA".into()],
            |v| {
                push(v, "/spec/networks", json!({"name": "dra", "resourceClaim": {"claimName": "c", "requestName": "r"}}));
                push(v, "/spec/domain/devices/interfaces", json!({"name": "dra", "sriov": {}}));
            },
            Reject("spec.networks[1].resourceClaim.claimName", "network references resourceClaim \"c\" which is not defined in spec.resourceClaims")
        ),
        case!(
            "discontinued slirp binding",
            |v| set(v, "/spec/domain/devices/interfaces/0", json!({"name": "default", "slirp": {}})),
            Reject("spec.domain.devices.interfaces[0].slirp", "Slirp interface support has been discontinued since v1.3")
        ),
    ]);
}
