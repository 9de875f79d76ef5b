public enum XenProtocolTesting {}
